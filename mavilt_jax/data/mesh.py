"""Deprecated: the IU X-ray MeSH terms -> CheXpert map is `mavilt_jax.data.mesh_terms` ("mesh"
here meant medical subject headings, not a device mesh)."""

from mavilt_jax.data.mesh_terms import *  # noqa: F403
from mavilt_jax.data.mesh_terms import labels_from_mesh, mesh_observations, mesh_problems  # noqa: F401
from mavilt_jax.deprecation import moved_module

moved_module(__name__, "mavilt_jax.data.mesh_terms")
