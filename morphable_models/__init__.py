"""morphable_models: parametric face geometry (linear / multilinear PCA models and blendshape rigs).

Depends only on torch, numpy and scipy. The default model is ICT-FaceKit (MIT licence):

>>> from morphable_models import load_ict           # doctest: +SKIP
>>> model = load_ict()                               # after 'facerender model install ict-facekit'
>>> out = model(expression=model.rig.weights({"jawOpen": 1.0}))
>>> out.vertices.shape
torch.Size([1, 26719, 3])
"""
from .blendshapes import ICT_FACS_TABLE, BlendshapeRig
from .errors import FaceModelError, ModelFileError, ModelNotInstalledError, ShapeError
from .geometry import (
    AXIS_FLIP,
    camera_to_model,
    check_faces,
    face_normals,
    model_to_camera,
    model_to_camera_rotation,
    pose_rotation,
    vertex_normals,
)
from .ict import install_ict, is_installed, load_ict
from .landmarks import IBUG68_LABELS, LandmarkEmbedding, vertices_to_landmarks
from .linear import CoefficientSpec, ComponentSpec, FaceModelOutput, LinearFaceModel, linear_blend
from .flame import FlameModel, load_flame
from .loaders import load_blendshape_folder
from .multilinear import TuckerFaceModel, build_from_ict
from .store import as_linear, convert_model, detect_format, load_model, model_info, save_model
from .obj_io import ObjMesh, read_obj, read_obj_vertices, triangulate, write_obj
from .paths import facerender_home, shared_data_dir
from .regions import Region
from .rotation import (
    axis_angle_to_matrix,
    euler_to_matrix,
    matrix_to_axis_angle,
    matrix_to_euler,
    matrix_to_rotation_6d,
    rotation_6d_to_matrix,
)

__version__ = "0.1.0"

__all__ = [name for name in dir() if not name.startswith("_")]
