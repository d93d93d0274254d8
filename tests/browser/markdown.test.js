// The console's Markdown renderer, run under node directly (it is a plain ES module with no DOM use).
import { test } from "node:test";
import assert from "node:assert/strict";
import { renderMarkdown } from "../../gateway/src/console/assets/markdown.js";

test("HTML in the source is escaped, never rendered", () => {
  assert.equal(renderMarkdown(`<img src=x onerror="alert(1)">`), `<p>&lt;img src=x onerror=&quot;alert(1)&quot;&gt;</p>`);
  assert.equal(renderMarkdown("```\n<script>x</script>\n```"), "<pre><code>&lt;script&gt;x&lt;/script&gt;</code></pre>");
  // A fence "language" with a quote is not a fence, so it cannot reach the class attribute.
  assert.equal(renderMarkdown('```js" onclick="x\na\n```'), "<p>```js&quot; onclick=&quot;x<br>a</p><pre><code></code></pre>");
});

test("headings, lists, emphasis, inline code and fenced code", () => {
  assert.equal(renderMarkdown("# Title\n## 小标题"), "<h1>Title</h1><h2>小标题</h2>");
  assert.equal(renderMarkdown("- one\n- **two**\n\n1. a\n2. *b*"), "<ul><li>one</li><li><strong>two</strong></li></ul><ol><li>a</li><li><em>b</em></li></ol>");
  assert.equal(renderMarkdown("use `a*b*c` here"), "<p>use <code>a*b*c</code> here</p>");
  assert.equal(renderMarkdown("```rust\nfn main() {}\n```"), `<pre><code class="language-rust" data-lang="rust">fn main() {}</code></pre>`);
  assert.equal(renderMarkdown("line one\nline two"), "<p>line one<br>line two</p>");
});

test("an unclosed fence mid-stream renders as an open code block", () => {
  assert.equal(renderMarkdown("Here:\n```py\nprint(1)"), "<p>Here:</p><pre><code class=\"language-py\" data-lang=\"py\">print(1)</code></pre>");
});
