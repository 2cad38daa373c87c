"""Pixels and faces: decode planned frames, detect and track faces, landmarks, alignment, models, identity."""
