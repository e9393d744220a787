//! Pipeline definitions (DESIGN.md 1.2).
