"""Data: the embedded synthetic dataset, COCO loading, cached tensors, datasets and dataset tools."""
