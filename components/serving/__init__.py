"""Using what was trained: a seeded image generator over any checkpoint (``generator``), and the
MLflow pyfunc that carries it, its code and its pinned requirements (``pyfunc``)."""
