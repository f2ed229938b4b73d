//! The model registry: the installed model packages of one folder, found
//! by id, and loaded on a backend. `vigie serve` (its workers), `vigie
//! infer` and `vigie validate run` all load models here, so that a package
//! is found and checked the same way whichever command runs it.

use std::path::{Path, PathBuf};

use crate::backend::BackendOptions;
use crate::manifest::BackendKind;
use crate::package::ModelPackage;
use crate::{Error, Model, Result};

/// The model packages installed under one folder (one sub-folder each,
/// holding a `model.toml`).
#[derive(Debug, Clone)]
pub struct ModelRegistry {
    root: PathBuf,
    default_model: Option<String>,
}

impl ModelRegistry {
    /// The packages under `root`; `default_model` is the id used when none
    /// is named.
    pub fn new(root: impl Into<PathBuf>, default_model: Option<String>) -> Self {
        Self {
            root: root.into(),
            default_model,
        }
    }

    /// The folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The package folders, sorted.
    pub fn package_dirs(&self) -> Result<Vec<PathBuf>> {
        ModelPackage::discover(&self.root).map_err(|source| Error::Registry {
            root: self.root.clone(),
            reason: RegistryProblem::Unreadable(source),
        })
    }

    /// Each package folder's name with its manifest, or why it cannot be
    /// read (a broken package is reported, not fatal to the others).
    pub fn manifests(&self) -> Result<Vec<(String, PathBuf, Result<crate::manifest::Manifest>)>> {
        Ok(self
            .package_dirs()?
            .into_iter()
            .filter_map(|dir| {
                let name = dir.file_name()?.to_string_lossy().into_owned();
                let manifest =
                    crate::manifest::Manifest::from_file(&dir.join(crate::package::MANIFEST_FILE));
                Some((name, dir, manifest))
            })
            .collect())
    }

    /// The folder of package `id`, or of the default one: the configured
    /// default, else the only package installed.
    pub fn find(&self, id: Option<&str>) -> Result<PathBuf> {
        let dirs = self.package_dirs()?;
        let problem = |reason| Error::Registry {
            root: self.root.clone(),
            reason,
        };
        match id.or(self.default_model.as_deref()) {
            Some(id) => dirs
                .iter()
                .find(|d| d.file_name().is_some_and(|n| n == id))
                .cloned()
                .ok_or_else(|| problem(RegistryProblem::NoSuchModel(id.to_string()))),
            None => match dirs.as_slice() {
                [only] => Ok(only.clone()),
                [] => Err(problem(RegistryProblem::Empty)),
                _ => Err(problem(RegistryProblem::Ambiguous(dirs.len()))),
            },
        }
    }

    /// Load package `id` (or the default one, see [`ModelRegistry::find`]),
    /// its weights hash-checked, on `backend` (default: the one its
    /// manifest names), its contract checked against the manifest.
    pub fn load(
        &self,
        id: Option<&str>,
        backend: Option<BackendKind>,
        options: &BackendOptions,
    ) -> Result<Model> {
        let package = ModelPackage::load(&self.find(id)?)?;
        let kind = backend.unwrap_or(package.manifest().weights.backend);
        Model::load_with_backend(package, kind, options)
    }
}

/// Why the registry cannot give a package.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryProblem {
    /// The folder cannot be listed.
    #[error("cannot list the folder")]
    Unreadable(#[source] std::io::Error),
    /// No package has this id.
    #[error("no model package {0:?}")]
    NoSuchModel(String),
    /// No package is installed.
    #[error("no model package installed")]
    Empty,
    /// Several are installed and none was named.
    #[error("{0} model packages installed: name one (--model, or inference.default_model)")]
    Ambiguous(usize),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn package(root: &Path, id: &str) {
        let dir = root.join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(crate::package::MANIFEST_FILE), "").unwrap();
    }

    #[test]
    fn a_package_is_found_by_id_by_default_or_alone_and_each_failure_says_why() {
        let dir = tempfile::tempdir().unwrap();
        let registry = ModelRegistry::new(dir.path(), None);
        let err = registry.find(None).unwrap_err();
        assert!(
            matches!(
                &err,
                Error::Registry {
                    reason: RegistryProblem::Empty,
                    ..
                }
            ),
            "{err}"
        );
        package(dir.path(), "b");
        assert_eq!(registry.find(None).unwrap(), dir.path().join("b"));
        package(dir.path(), "a");
        let err = registry.find(None).unwrap_err();
        assert!(
            err.to_string().contains("2 model packages installed"),
            "{err}"
        );
        assert_eq!(registry.find(Some("a")).unwrap(), dir.path().join("a"));
        let err = registry.find(Some("c")).unwrap_err();
        assert!(err.to_string().contains("no model package \"c\""), "{err}");
        let with_default = ModelRegistry::new(dir.path(), Some("b".into()));
        assert_eq!(with_default.find(None).unwrap(), dir.path().join("b"));
        let missing = ModelRegistry::new(dir.path().join("nope"), None);
        let err = missing.find(None).unwrap_err();
        assert!(std::error::Error::source(&err).is_some(), "{err}");
    }
}
