"""Electrolyte screening: formulations in, properties with error bars out, locally or on a Dask cluster.

=================  ==========================================================================================
``spec``           typed formulation spec (YAML or CLI flags), validation of every bad input before MD starts
``composition``    solvent ratios (mole/mass/volume) + salt concentration (molar/molal) -> molecule counts, box
``protocol``       minimise -> NPT equilibration -> NPT density production -> transport replicas (checkpointed)
``properties``     the analysis estimators wired to a formulation folder; every property with its uncertainty
``store``          ASE database, one row per formulation (properties, uncertainties, provenance, structure)
``runner``         Dask scheduling of the stages, rich progress, skip finished work, isolate failures
``report``         HTML + Markdown report with a ranked table and figures
``placeholder``    stabilising classical restraints for tests and the demo's no-model fallback (not physics)
=================  ==========================================================================================

``example.yaml`` is an annotated spec.

``mlmd screen SPEC.yaml`` and ``mlmd report DB`` are the command-line entry points; ``python -m workflows.demo``
screens three small formulations.
"""
