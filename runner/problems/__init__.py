"""What is minimised: the expression language (`expressions`) and the losses of conf/loss/
built from it (`losses`). Nothing here knows of Hydra, MLflow or a framework: every framework
gets its functions from here through its engine's OPS."""
