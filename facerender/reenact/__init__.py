"""Face reenactment: Face2Face end to end (tracking both videos, expression transfer, rendering, compositing).

Image-space building blocks (``docs/reenactment.md``): :mod:`facerender.reenact.reproject` (colouring the
re-rendered face from the current target frame), :mod:`facerender.reenact.blend` (seamless compositing),
:mod:`facerender.reenact.mouth` (the target's mouth-interior database and retrieval).
"""
