// Tells the kernel, once, that the page has drawn the dashboard: the kernel then builds the heavy views,
// so that the prompt box never waits for them.
export default {
  /** @param {{ model: any, el: HTMLElement }} ctx */
  render({ model, el }) {
    el.style.display = "none";
    model.send({ event: "rendered" });
  },
};
