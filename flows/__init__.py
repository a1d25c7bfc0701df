"""The segmentation pipeline: configuration, loading, features, the results store and the Prefect flow."""
