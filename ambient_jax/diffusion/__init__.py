"""The diffusion math: the VE and VP processes (schedules), EDM's preconditioning (precond), the
per-row losses and the noisy copies (losses), the training objective over a batch (objective),
the samplers (sampling) and batched sampling of a model over a device mesh (generate)."""
