"""Reports: render stored runs as tables (collect -> table -> render -> latex/markdown), figures (plots),
the loss ablation (ablation) and whole report directories (build). Never trains."""
