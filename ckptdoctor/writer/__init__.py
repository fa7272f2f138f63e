"""Writers: every output is streamed to temporary files beside the target and renamed into place."""
