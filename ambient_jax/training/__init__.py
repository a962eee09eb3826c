"""The trainer: the parameters, optimizer and EMA (train_state), one step (train_step) compiled
over a mesh (compiled_step), the training data held or streamed (training_data), the work dir's
resume and restore (run_dir, checkpoint, workdir_lock), the start from a trained run (finetune),
memorization tracked during training (tracking) and the loop (train)."""
