"""Analysis and figures: episode grids, prototype embeddings, similarity statistics."""
from .collect import PrototypeSet, collect_prototypes, prototype_distances, support_query_distances
from .embedding import embed, plot_embedding, silhouette_by_class, tsne
from .plotting import episode_grid, figures_dir, save_figure
from .similarity import (
                         PROTOTYPE_STATISTICS,
                         STATISTICS,
                         PixelSample,
                         class_images,
                         class_similarity_matrix,
                         object_map,
                         pixel_similarity_pairs,
                         prototype_similarity_pairs,
                         sample_pixel_features,
                         sample_pixels,
                         similarity_table,
)

__all__ = [
    "PROTOTYPE_STATISTICS", "STATISTICS", "PixelSample", "PrototypeSet", "class_images", "class_similarity_matrix",
    "collect_prototypes", "embed", "episode_grid", "figures_dir", "object_map", "pixel_similarity_pairs",
    "plot_embedding", "prototype_distances", "prototype_similarity_pairs", "sample_pixel_features", "sample_pixels",
    "save_figure", "silhouette_by_class", "similarity_table", "support_query_distances", "tsne",
]
