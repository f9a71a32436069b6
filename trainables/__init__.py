"""Ray Tune glue: the only Ray code besides ``launch.py``. ``src/`` stays plain torch/Lightning."""
