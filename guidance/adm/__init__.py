"""OpenAI guided-diffusion (ADM) released checkpoints: the releases' architectures and the conversion into the
toolkit's snapshots (guidance-import-adm)."""

from guidance.adm.convert import convert_state_dict, legacy_to_new_qkv, rename_key
from guidance.adm.releases import RELEASES, Release, release

__all__ = ["RELEASES", "Release", "release", "convert_state_dict", "legacy_to_new_qkv", "rename_key"]
