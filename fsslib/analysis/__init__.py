"""Analysis and figures: episode grids, prototype embeddings, similarity statistics."""
from .plotting import episode_grid, figures_dir, save_figure

__all__ = ["episode_grid", "figures_dir", "save_figure"]
