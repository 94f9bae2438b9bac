"""LightningDataModules; the registry maps config names to import strings (loaded lazily)."""

DATAMODULES = {
    "toy": "datamodules.toy:ToyDataModule",
    "images": "datamodules.images:ImageDataModule",
    "latents": "datamodules.latents:LatentDataModule",
}
