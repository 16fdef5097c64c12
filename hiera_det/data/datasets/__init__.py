"""Generated datasets bundled with hiera_det."""
