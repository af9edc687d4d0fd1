"""Sample-quality metrics in the in-domain classifier's feature space.

``features`` turns uint8 images into features once; ``fid`` (Fréchet distance, KID, FID
spread), ``precision_recall`` (k-NN manifold precision/recall, density/coverage) and
``conditional`` (label accuracy of conditional samples) all work on those arrays. Import the
submodules you need; nothing heavy is imported here.
"""
