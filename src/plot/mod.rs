//! Pictures of runs (`client --report`, `bench --report`), drawn with plotters into an SVG
//! or a PNG file.
//!
//! [`client`] draws a client run (RTT over time with its events, RTT histogram, summary);
//! [`bench`] draws a load run (rate and latency percentiles per second). This file picks the
//! backend from the file name, loads the font and writes the file.
//!
//! Text needs a real font for both formats: plotters measures text with it to lay labels
//! out (SVG) and rasterises with it (PNG). Rather than embed 700 KB of font in the binary,
//! DejaVu Sans is read at run time from where distributions install it (Debian:
//! `fonts-dejavu-core`), or from `SENSORLINK_REPORT_FONT`; a missing font, like a file that
//! cannot be written, is a clear error before the run starts ([`check_ready`]).

pub mod bench;
pub mod client;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

/// Picture size in pixels (SVG user units).
pub const SIZE: (u32, u32) = (1200, 860);

/// The font family every text of a picture uses (registered by [`load_font`]).
const FAMILY: &str = "sans-serif";

/// Names a font file to use instead of the ones searched.
pub const FONT_ENV: &str = "SENSORLINK_REPORT_FONT";

/// Where distributions install DejaVu Sans (Debian/Ubuntu, Fedora, Arch, Alpine).
const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// The two picture formats, chosen by the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Svg,
    Png,
}

impl Format {
    /// The format a file name asks for (`.svg` or `.png`, any case), if any.
    pub fn of(path: &Path) -> Option<Format> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "svg" => Some(Format::Svg),
            "png" => Some(Format::Png),
            _ => None,
        }
    }
}

/// Why a picture could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PlotError {
    #[error("{} is not a picture file name: use .svg or .png", path.display())]
    Format { path: PathBuf },
    #[error("no font for the report: {0}")]
    Font(String),
    #[error("drawing the report: {0}")]
    Draw(String),
    #[error("cannot write the report {}", path.display())]
    Destination {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the report {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding the PNG report {}", path.display())]
    Png {
        path: PathBuf,
        #[source]
        source: png::EncodingError,
    },
}

/// The font, loaded once per process (plotters' font table is global and wants `'static`).
static FONT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Find, read and register the font pictures are drawn with; call before a run so that a
/// missing font fails at once, not after the run. Later calls return the first outcome.
///
/// # Errors
/// [`PlotError::Font`] naming where it looked (and the package to install).
pub fn load_font() -> Result<PathBuf, PlotError> {
    FONT.get_or_init(|| {
        let wanted = std::env::var_os(FONT_ENV).map(PathBuf::from);
        let candidates: Vec<PathBuf> = match &wanted {
            Some(path) => vec![path.clone()],
            None => FONT_PATHS.iter().map(PathBuf::from).collect(),
        };
        let Some((path, bytes)) = candidates
            .iter()
            .find_map(|p| std::fs::read(p).ok().map(|b| (p.clone(), b)))
        else {
            let tried = candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ");
            return Err(format!(
                "cannot read DejaVu Sans (tried {tried}); install it (Debian: apt-get install \
                 fonts-dejavu-core) or set {FONT_ENV} to a TrueType font file"
            ));
        };
        // Leaked once per process: plotters keeps fonts for the life of the program.
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        plotters::style::register_font(FAMILY, FontStyle::Normal, bytes)
            .map_err(|_| format!("{} is not a TrueType/OpenType font", path.display()))?;
        Ok(path)
    })
    .clone()
    .map_err(PlotError::Font)
}

/// Everything a picture at `path` needs, checked before a run so that the run is not
/// wasted: a usable font ([`load_font`]) and a file that can be written there (its
/// directory exists and takes the file; a file made for the check is removed again).
///
/// # Errors
/// [`PlotError::Font`], or [`PlotError::Destination`] naming the path.
pub fn check_ready(path: &Path) -> Result<(), PlotError> {
    load_font()?;
    let existed = path.exists();
    let destination = |source| PlotError::Destination {
        path: path.to_path_buf(),
        source,
    };
    // Not truncated: an existing picture is only replaced once the new one is drawn.
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(destination)?;
    if !existed {
        std::fs::remove_file(path).map_err(destination)?;
    }
    Ok(())
}

/// Write `path` (its format from its name) with a picture of [`SIZE`] drawn by `draw_svg`
/// or `draw_png`: the same drawing code, called with one backend or the other (plotters'
/// backends are different types).
///
/// # Errors
/// A file name that is neither `.svg` nor `.png`, no font, a drawing error, or the file
/// cannot be written.
pub(crate) fn write_picture(
    path: &Path,
    draw_svg: impl FnOnce(DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), PlotError>,
    draw_png: impl FnOnce(DrawingArea<BitMapBackend<'_>, Shift>) -> Result<(), PlotError>,
) -> Result<(), PlotError> {
    let format = Format::of(path).ok_or_else(|| PlotError::Format {
        path: path.to_path_buf(),
    })?;
    load_font()?;
    let write_err = |source| PlotError::Write {
        path: path.to_path_buf(),
        source,
    };
    match format {
        Format::Svg => {
            let mut svg = String::new();
            {
                let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
                draw_svg(root)?;
            }
            std::fs::write(path, svg).map_err(write_err)
        }
        Format::Png => {
            let (w, h) = SIZE;
            let mut rgb = vec![0u8; w as usize * h as usize * 3];
            {
                let root = BitMapBackend::with_buffer(&mut rgb, SIZE).into_drawing_area();
                draw_png(root)?;
            }
            let file = std::fs::File::create(path).map_err(write_err)?;
            let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), w, h);
            encoder.set_color(png::ColorType::Rgb);
            encoder.set_depth(png::BitDepth::Eight);
            let png_err = |source| PlotError::Png {
                path: path.to_path_buf(),
                source,
            };
            let mut writer = encoder.write_header().map_err(png_err)?;
            writer.write_image_data(&rgb).map_err(png_err)?;
            writer.finish().map_err(png_err)
        }
    }
}

/// Turns plotters' errors (one type per backend) into [`PlotError::Draw`].
pub(crate) trait Drawn<T> {
    fn drawn(self) -> Result<T, PlotError>;
}

impl<T, E: std::fmt::Display> Drawn<T> for Result<T, E> {
    fn drawn(self) -> Result<T, PlotError> {
        self.map_err(|err| PlotError::Draw(err.to_string()))
    }
}

/// Fill the canvas white and write `lines` as the header (the first one larger), returning
/// the area below it.
pub(crate) fn header<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    lines: &[String],
) -> Result<DrawingArea<DB, Shift>, PlotError> {
    root.fill(&WHITE).drawn()?;
    let height = 20 + 24 * lines.len() as u32;
    let (top, rest) = root.split_vertically(height);
    for (i, line) in lines.iter().enumerate() {
        let size = if i == 0 { 22 } else { 16 };
        let style = TextStyle::from((FAMILY, size).into_font()).color(&BLACK);
        top.draw(&Text::new(line.clone(), (16, 12 + 24 * i as i32), style))
            .drawn()?;
    }
    Ok(rest)
}

/// A text style of the pictures' font.
/// A chart on `area` with this project's margins, fonts and mesh: `caption`, the `x` and
/// `y` ranges, their descriptions, the width kept for y labels, and whether y labels are
/// whole numbers (counts, rates).
pub(crate) fn chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    caption: &str,
    (x, y): (Range<f64>, Range<f64>),
    (x_desc, y_desc): (&str, &str),
    y_label_width: u32,
    whole_y: bool,
) -> Result<ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>, PlotError> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, font(18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(y_label_width)
        .build_cartesian_2d(x, y)
        .drawn()?;
    let whole = |v: &f64| format!("{v:.0}");
    let mut mesh = chart.configure_mesh();
    mesh.x_desc(x_desc)
        .y_desc(y_desc)
        .label_style(font(13))
        .axis_desc_style(font(14));
    if whole_y {
        mesh.y_label_formatter(&whole);
    }
    mesh.draw().drawn()?;
    Ok(chart)
}

pub(crate) fn font(size: u32) -> TextStyle<'static> {
    TextStyle::from((FAMILY, size).into_font())
}

/// An axis range that is never empty (plotters cannot scale `0..0`), with some headroom.
pub(crate) fn axis_max(max: f64, floor: f64) -> f64 {
    if max.is_finite() && max > floor {
        max * 1.08
    } else {
        floor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_comes_from_the_extension() {
        assert_eq!(Format::of(Path::new("a/run.svg")), Some(Format::Svg));
        assert_eq!(Format::of(Path::new("RUN.PNG")), Some(Format::Png));
        assert_eq!(Format::of(Path::new("run.jpg")), None);
        assert_eq!(Format::of(Path::new("svg")), None);
    }

    /// A missing directory, or a directory where the file should be, is refused before a
    /// run; a writable path is accepted and left as it was.
    #[test]
    fn a_picture_destination_is_checked_before_the_run() {
        if load_font().is_err() {
            // Without the font the check stops earlier (tests/it/report.rs covers it).
            return;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("no-such-dir/run.svg");
        let err = check_ready(&missing).expect_err("no such directory");
        assert!(matches!(err, PlotError::Destination { .. }), "{err}");
        assert!(err.to_string().contains("no-such-dir/run.svg"), "{err}");
        let a_dir = dir.path().join("run.svg");
        std::fs::create_dir(&a_dir).expect("mkdir");
        assert!(check_ready(&a_dir).is_err(), "a directory is no file");
        let fine = dir.path().join("fine.svg");
        check_ready(&fine).expect("writable");
        assert!(!fine.exists(), "the check leaves no file behind");
        std::fs::write(&fine, "old").expect("write");
        check_ready(&fine).expect("writable");
        assert_eq!(std::fs::read_to_string(&fine).expect("read"), "old");
    }

    #[test]
    fn axis_ranges_are_never_empty() {
        assert_eq!(axis_max(0.0, 1.0), 1.0);
        assert_eq!(axis_max(f64::NAN, 1.0), 1.0);
        assert!(axis_max(10.0, 1.0) > 10.0);
    }
}
