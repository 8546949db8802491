"""Data files of the report (not code): the stylesheet and the script that
:mod:`tcomp.report.page` reads through importlib.resources and inlines into every report.html."""
