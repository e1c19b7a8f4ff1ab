"""TUF signing for the Image repository and the per-vehicle Director, with their keys."""
