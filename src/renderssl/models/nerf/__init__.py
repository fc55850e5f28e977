"""GNT / NPS generalizable NeRF transformer: source-view projection, view and ray transformers, heads.

- :mod:`.projector`: samples of target rays projected into every source view; bilinearly sampled colours
  and features, the visibility mask, GNT's 4-d relative-direction feature.
- :mod:`.view_transformer`: subtraction vector attention over the source views of each sample.
- :mod:`.ray_transformer`: multi-head self-attention across the samples of each ray.
- :mod:`.transformer`: the interleaved trunk (GNT's model): colour, attention depth, per-sample features.
"""

from .projector import PADDING_MODES, ProjectedSamples, project_samples, relative_directions, sample_points_on_rays
from .ray_transformer import RayTransformer
from .transformer import (
    GeneralizableNeRFTransformer, NeRFTransformerConfig, NeRFTransformerOutput, positional_encoding,
)
from .view_transformer import ViewTransformer

__all__ = ["PADDING_MODES", "ProjectedSamples", "project_samples", "relative_directions", "sample_points_on_rays",
           "ViewTransformer", "RayTransformer", "GeneralizableNeRFTransformer", "NeRFTransformerConfig",
           "NeRFTransformerOutput", "positional_encoding"]
