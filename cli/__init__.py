"""The `pfcr` command line and the main job: the top layer, the only one that knows every part."""
