//! Export archives (`export-path` output, `import-paths` input). (Being written.)
