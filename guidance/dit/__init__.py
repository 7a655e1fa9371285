"""DiT (facebookresearch/DiT) and SiT (willisma/SiT) releases: their conversion onto diffusers'
DiTTransformer2DModel (guidance.nn.dit.DiTNetwork) and their import into toolkit snapshots (guidance-import-dit)."""

from guidance.dit.convert import check_shared, convert_state_dict, dit_to_diffusers

__all__ = ["convert_state_dict", "dit_to_diffusers", "check_shared"]
