"""The functional core: pure torch / numpy on tensors and arrays, no I/O, no Ray.

`geometry` (face regions, crops, packing), `align` (differentiable 5-point alignment),
`metrics` + `perceptual` (PSNR, SSIM, SSIMULACRA 2 on the face), `compose` (per-face changes
composed into a photo), `budget` (each face's quality floors), `settings` (`CloakSettings`,
the presets). Imports nothing from facepriv but `errors` (tests/test_layout.py checks it).
"""
