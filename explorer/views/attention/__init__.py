"""The "Heatmap", "All heads", "Attention math" and "bertviz" tabs: who attends to whom, one head or all of them."""
