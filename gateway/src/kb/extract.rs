//! Plain text out of the formats the knowledge base takes: Markdown and text as they are, HTML with its
//! tags, scripts and styles removed and the common entities decoded.

use std::path::Path;

/// A document format, from the file's extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Markdown,
    Text,
    Html,
}

impl Format {
    /// The format of `path` by its extension (case-insensitive); `None`: not supported.
    pub fn of(path: &Path) -> Option<Self> {
        let ext = path.extension()?.to_str()?.to_ascii_lowercase();
        match ext.as_str() {
            "md" | "markdown" => Some(Self::Markdown),
            "txt" | "text" => Some(Self::Text),
            "html" | "htm" => Some(Self::Html),
            _ => None,
        }
    }
}

/// The text of a document in `format`.
pub fn extract(format: Format, content: &str) -> String {
    match format {
        Format::Markdown | Format::Text => content.replace("\r\n", "\n"),
        Format::Html => html_text(content),
    }
}

/// Block-level tags: each ends a paragraph.
const BLOCKS: [&str; 16] = [
    "p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table", "section", "article",
];

fn html_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len() / 2);
    let mut rest = html;
    while let Some(open) = rest.find('<') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let Some(close) = after.find('>') else {
            rest = "";
            break;
        };
        let tag = after[..close].trim_start_matches('/').trim();
        let name: String = tag
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect::<String>()
            .to_ascii_lowercase();
        rest = &after[close + 1..];
        if (name == "script" || name == "style") && !after.starts_with('/') {
            // Skip to the matching end tag.
            let end = format!("</{name}");
            let lower = rest.to_ascii_lowercase();
            rest = match lower.find(&end) {
                Some(at) => rest[at..].find('>').map_or("", |gt| &rest[at + gt + 1..]),
                None => "",
            };
        } else if BLOCKS.contains(&name.as_str()) {
            out.push_str("\n\n");
        }
    }
    out.push_str(rest);
    let decoded = out
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    // Collapse the whitespace inside paragraphs, keep paragraph breaks.
    decoded
        .split("\n\n")
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_loses_tags_scripts_and_entities() {
        let html = "<html><head><style>p{}</style><script>var a = '<p>';</script></head>\
                    <body><h1>退货政策</h1><p>七天内&amp;无理由</p><p>A &lt;b&gt;</p></body></html>";
        assert_eq!(extract(Format::Html, html), "退货政策\n\n七天内&无理由\n\nA <b>");
        assert_eq!(Format::of(Path::new("a/B.HTM")), Some(Format::Html));
        assert_eq!(Format::of(Path::new("a.pdf")), None);
    }
}
