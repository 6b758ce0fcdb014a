"""XRec (Ma et al., 2024)."""
