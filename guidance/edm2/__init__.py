"""NVlabs/edm2 (Karras et al. 2024) releases: reading their network pickles without executing them, their
configurations and generation presets, and the conversion into toolkit snapshots (guidance-import-edm2). The
network itself is guidance.nn.edm2.EDM2Denoiser."""

from guidance.edm2.convert import EDM2File, check_state, infer_config, read_edm2_file
from guidance.edm2.importer import denoising_model, import_edm2, load_edm2_snapshot
from guidance.edm2.releases import (ARCHITECTURES, GENERATION_PRESETS, STABILITY_VAE, Architecture, GenerationPreset,
                                    architecture, generation_preset, parse_file_name)
from guidance.edm2.safe_pickle import load_edm2_pickle

__all__ = ["ARCHITECTURES", "GENERATION_PRESETS", "STABILITY_VAE", "Architecture", "GenerationPreset", "EDM2File",
           "architecture", "generation_preset", "parse_file_name", "read_edm2_file", "infer_config", "check_state",
           "import_edm2", "denoising_model", "load_edm2_snapshot", "load_edm2_pickle"]
