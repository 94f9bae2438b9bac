"""LightningModules, one per method; the registry maps config names to import strings (loaded lazily)."""

METHODS = {
    "stylegan2": "lightning_modules.stylegan2:StyleGAN2Module",
    "mixdl": "lightning_modules.mixdl:MixDLModule",
    "nada": "lightning_modules.nada:NADAModule",
    "nada_mapper": "lightning_modules.nada_mapper:NADAMapperModule",
    "idinvert": "lightning_modules.idinvert:IDInvertModule",
    "expansion": "lightning_modules.expansion:ExpansionModule",
    "dualstylegan": "lightning_modules.dualstylegan:DualStyleGANModule",
}
