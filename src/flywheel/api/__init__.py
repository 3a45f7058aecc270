"""Resource API: pydantic models of Flywheel's custom resources and the CRD generator."""
