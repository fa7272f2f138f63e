"""Format-independent analysis of a listing: roles and BatchNorm layers."""
