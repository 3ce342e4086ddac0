"""The network (Flax NNX) and, as they land, its image and audio tokenizers."""
