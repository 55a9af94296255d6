"""Rollout: generation backends and the user-side collection of trajectories."""
