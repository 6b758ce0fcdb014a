"""Training shared by every recipe: the loop (``loop``), its settings (``settings``), atomic checkpoints
(``checkpoint``) and small utilities (``loop_utils``). Nothing is imported here, so reading a method's settings
does not load torch."""
