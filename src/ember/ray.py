"""Ember on Ray (pip install 'ember[ray]'): batch embedding on Ray Data, serving on Ray Serve.

    ember.ray.embed_dataset(ds, model, ...)  -> the dataset with an embedding column
    ember.ray.deployment(model, ...)         -> a Serve application of warm Ember replicas
"""

from ember.entrypoints.ray_data import embed_dataset
from ember.entrypoints.ray_serve import deployment

__all__ = ["deployment", "embed_dataset"]
