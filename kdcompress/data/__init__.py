"""Datasets by name, and the device-side batching that feeds the engine.

``sources`` reads datasets (uint8 images in memory, or file lists); ``files`` decodes image files in
DataLoader workers; ``loader`` batches and augments on the training device; ``bundle`` puts them together
as a recipe's ``data`` section asks.
"""

from kdcompress.data.bundle import DataBundle, load_data
from kdcompress.data.loader import Batch, ImageFormat, Loader, epoch_seed
from kdcompress.data.sources import Dataset, read_source

__all__ = [
    "Batch",
    "DataBundle",
    "Dataset",
    "ImageFormat",
    "Loader",
    "epoch_seed",
    "load_data",
    "read_source",
]
