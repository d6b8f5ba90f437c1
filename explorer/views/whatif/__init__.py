"""What if: the tree of a trace's branches, the panel that switches heads off and shows what changed, and the
view that compares two traces side by side."""
