// The web view (placeholder).
