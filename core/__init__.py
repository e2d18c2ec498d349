"""What the edge, the control plane and the preview supervisor share: ids, JSON, processes, errors."""
