"""Pipeline stages, one module each: decode → detect → quality → align → embed."""
