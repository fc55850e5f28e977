"""renderssl: self-supervised pretraining of vision encoders by differentiable rendering.

Conventions (used everywhere, see docs/conventions.md):
cameras are OpenCV (x right, y down, z forward), ``K`` is 3x3 in pixels with pixel centres at
half-integers, ``c2w`` is camera-to-world and ``w2c`` its inverse; images are ``(B, 3, H, W)`` in
[0, 1]; depth is metric z-depth ``(B, 1, H, W)`` with 0 = invalid; quaternions are wxyz.
"""

__version__ = "0.1.0"
