"""Turning results into things people look at: loss curves, sample grids, the HTML report."""
