"""Rasterizer backends. Import nothing optional here: each backend module is imported on first use through the
registry in :mod:`facerender.render.rasterize`.

* ``torch_backend`` (``"torch"``, the default): vectorised pure PyTorch, CPU and CUDA.
* ``reference`` (``"reference"``): dense and simple, the oracle of the tests and the baseline of the benchmark.
* ``pytorch3d_backend`` (``"pytorch3d"``): PyTorch3D's ``rasterize_meshes``; ``pip install "facerender[pytorch3d]"``.
* ``nvdiffrast_backend`` (``"nvdiffrast"``): nvdiffrast's CUDA rasterizer; ``pip install "facerender[nvdiffrast]"``
  (needs a CUDA GPU).

A backend is a callable ``(screen_vertices (B, V, 3), faces (F, 3) int64, (H, W), RasterSettings) -> Fragments``
receiving validated inputs; most decide visibility only and hand the triangle ids to
:func:`facerender.render.rasterize.fragments_from_triangle_ids`.
"""
