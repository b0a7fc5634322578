"""Image lists, decoding, transforms, batch samplers and multiprocess loaders."""
from reader.decode import BadImageError, load_rgb
from reader.image_list import ImageList, read_image_list
from reader.loaders import TestLoader, TrainLoader, make_train_loader
from reader.transforms import test_transform, train_transform

__all__ = ["BadImageError", "ImageList", "TestLoader", "TrainLoader", "load_rgb",
           "make_train_loader", "read_image_list", "test_transform", "train_transform"]
