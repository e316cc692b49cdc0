"""Dynamic routing for semantic segmentation (Li et al., CVPR 2020)."""
