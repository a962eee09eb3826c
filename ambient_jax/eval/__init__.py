"""The evaluation: nearest-training-neighbour memorization scores and Fréchet distances."""
