"""runner: gradient-descent experiments configured by Hydra, computed by NumPy, TensorFlow or
PyTorch, and tracked in MLflow. Run it with `python -m runner`."""
