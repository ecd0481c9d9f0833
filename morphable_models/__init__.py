"""morphable_models: parametric face geometry (linear / multilinear PCA models and blendshape rigs).

Depends only on torch, numpy and scipy. The default model is ICT-FaceKit (MIT licence):

>>> from morphable_models import load_ict           # doctest: +SKIP
>>> model = load_ict()                               # after 'facerender model install ict-facekit'
>>> out = model(expression=model.rig.weights({"jawOpen": 1.0}))
>>> out.vertices.shape
torch.Size([1, 26719, 3])

Names are imported on first use (``import morphable_models`` does not import torch; docs/api.md).
"""
from ._lazy import attach

_EXPORTS = {
    # blendshape rigs
    "ICT_FACS_TABLE": ".blendshapes", "BlendshapeRig": ".blendshapes",
    # errors
    "FaceModelError": ".errors", "ModelFileError": ".errors", "ModelNotInstalledError": ".errors",
    "ShapeError": ".errors",
    # geometry: the one model -> camera transform, normals
    "AXIS_FLIP": ".geometry", "camera_to_model": ".geometry", "check_faces": ".geometry", "face_normals": ".geometry",
    "model_to_camera": ".geometry", "model_to_camera_rotation": ".geometry", "pose_rotation": ".geometry",
    "vertex_normals": ".geometry",
    # ICT-FaceKit
    "install_ict": ".ict", "is_installed": ".ict", "load_ict": ".ict",
    # landmarks
    "IBUG68_LABELS": ".landmarks", "LandmarkEmbedding": ".landmarks", "vertices_to_landmarks": ".landmarks",
    # linear models
    "CoefficientSpec": ".linear", "ComponentSpec": ".linear", "FaceModelOutput": ".linear",
    "LinearFaceModel": ".linear", "linear_blend": ".linear",
    # other formats (docs/models.md)
    "FlameModel": ".flame", "load_flame": ".flame", "load_blendshape_folder": ".loaders",
    "TuckerFaceModel": ".multilinear", "build_from_ict": ".multilinear",
    "as_linear": ".store", "convert_model": ".store", "detect_format": ".store", "load_model": ".store",
    "model_info": ".store", "save_model": ".store",
    # meshes, paths, regions, rotations
    "ObjMesh": ".obj_io", "read_obj": ".obj_io", "read_obj_vertices": ".obj_io", "triangulate": ".obj_io",
    "write_obj": ".obj_io",
    "facerender_home": ".paths", "shared_data_dir": ".paths",
    "Region": ".regions",
    "axis_angle_to_matrix": ".rotation", "euler_to_matrix": ".rotation", "matrix_to_axis_angle": ".rotation",
    "matrix_to_euler": ".rotation", "matrix_to_rotation_6d": ".rotation", "rotation_6d_to_matrix": ".rotation",
}

_SUBMODULES = ("bfm", "blendshapes", "correspondence", "errors", "flame", "format_utils", "geometry", "ict",
               "landmarks", "linear", "loaders", "multilinear", "obj_io", "paths", "regions", "rotation", "store",
               "surrey", "synthetic")

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = attach(__name__, _EXPORTS, _SUBMODULES)
